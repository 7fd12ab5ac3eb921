//! Verifying bazaar access tokens, for the gateway and for every service that checks
//! authorization itself.
//!
//! Tokens are JWTs signed by the identity service with EdDSA (Ed25519). A [`Verifier`] keeps the
//! identity service's JWKS in memory: it refreshes it in the background, refetches at most once
//! per `min_refetch` when a token names a key it does not know (a rotation it has not seen yet),
//! and keeps the keys it has when the identity service is unreachable, so verification never
//! depends on identity being up. Anything but EdDSA is refused, `alg: none` included.

mod claims;
mod extract;
mod verifier;

#[cfg(feature = "testing")]
pub mod testing;

pub use claims::{Audience, Claims};
pub use extract::{bearer_token, Caller, RequireAdmin, RequireService};
pub use verifier::{AuthError, JwksFetcher, Verifier};

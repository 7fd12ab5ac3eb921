//! A service's request state as one shared pointer.
//!
//! axum clones a router's state for every request (into the handler's call, and again for each
//! `State` extractor) and drops the clones after it. A service state of many handles (a
//! repository, clients, a token verifier, an audit log, each holding its own reference counts,
//! some of them strings and sets) made that cost 2 to 5% of a busy service's CPU
//! (docs/performance.md, eleventh round). [`request_state!`] declares the state as a newtype
//! over `Arc<Shared>` that dereferences to the shared fields, so handlers still write
//! `state.repository` and a clone is one reference count.

/// Declares `$name`, a cheaply cloned handle (one `Arc`) to `$shared`, which it dereferences
/// to; `$name::from(shared)` builds it. See the module documentation.
///
/// ```
/// pub struct Shared {
///     pub greeting: String,
/// }
/// bazaar_kit::request_state! {
///     /// What the handlers share.
///     pub struct AppState(Shared);
/// }
/// let state = AppState::from(Shared { greeting: "hello".into() });
/// let clone = state.clone();
/// assert_eq!(clone.greeting, "hello");
/// ```
#[macro_export]
macro_rules! request_state {
    ($(#[$meta:meta])* $vis:vis struct $name:ident($shared:ty);) => {
        $(#[$meta])*
        #[derive(Clone)]
        $vis struct $name(::std::sync::Arc<$shared>);

        impl ::std::ops::Deref for $name {
            type Target = $shared;
            fn deref(&self) -> &$shared {
                &self.0
            }
        }

        impl ::std::convert::From<$shared> for $name {
            fn from(shared: $shared) -> Self {
                Self(::std::sync::Arc::new(shared))
            }
        }
    };
}

//! Static content compiled into the binary from the repository's `assets/` folder, each file
//! with a content hash so it can be served under a hashed name (`products/mug.3fa9c2d1e0.svg`)
//! and cached forever by browsers and CDNs. A changed file gets a new name; an unhashed name
//! stays available with an ETag for revalidation.
//!
//! The catalog uses this to publish image URLs; the gateway uses it to serve them.

use std::collections::HashMap;
use std::sync::OnceLock;

use include_dir::{include_dir, Dir, DirEntry};
use sha2::{Digest, Sha256};

static ASSETS_DIR: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../assets");

/// URL prefix under which assets are served.
pub const URL_PREFIX: &str = "/static/";

/// One static file.
#[derive(Debug)]
pub struct Asset {
    /// Path under `assets/`, e.g. `products/kit-0001.svg`.
    pub logical: String,
    /// The same path with the content hash before the extension.
    pub hashed: String,
    pub bytes: &'static [u8],
    pub content_type: String,
    /// Strong ETag (quoted) of the content.
    pub etag: String,
}

/// Every asset, by logical and by hashed path.
#[derive(Debug, Default)]
pub struct Assets {
    by_logical: HashMap<String, usize>,
    by_hashed: HashMap<String, usize>,
    all: Vec<Asset>,
}

/// The assets compiled into this binary.
pub fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let mut assets = Assets::default();
        collect(&ASSETS_DIR, &mut assets);
        assets
    })
}

fn collect(dir: &'static Dir<'static>, assets: &mut Assets) {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => collect(sub, assets),
            DirEntry::File(file) => {
                let logical = file.path().to_string_lossy().replace('\\', "/");
                assets.insert(logical, file.contents());
            }
        }
    }
}

impl Assets {
    /// Adds a file (also used by tests to build a set by hand).
    pub fn insert(&mut self, logical: String, bytes: &'static [u8]) {
        let digest = Sha256::digest(bytes);
        let short = hex::encode(&digest[..5]);
        let hashed = match logical.rfind('.') {
            Some(dot) if !logical[dot..].contains('/') => {
                format!("{}.{short}{}", &logical[..dot], &logical[dot..])
            }
            _ => format!("{logical}.{short}"),
        };
        let content_type = mime_guess::from_path(&logical)
            .first_or_octet_stream()
            .essence_str()
            .to_owned();
        let index = self.all.len();
        self.by_logical.insert(logical.clone(), index);
        self.by_hashed.insert(hashed.clone(), index);
        self.all.push(Asset {
            logical,
            hashed,
            bytes,
            content_type,
            etag: format!("\"{}\"", hex::encode(&digest[..16])),
        });
    }

    /// Looks a request path (without the `/static/` prefix) up; the flag says whether it named
    /// the hashed (immutable) variant.
    pub fn lookup(&self, path: &str) -> Option<(&Asset, bool)> {
        if let Some(&i) = self.by_hashed.get(path) {
            return Some((&self.all[i], true));
        }
        self.by_logical.get(path).map(|&i| (&self.all[i], false))
    }

    /// The public URL of the hashed variant of `logical`, e.g.
    /// `/static/products/kit-0001.3fa9c2d1e0.svg`.
    pub fn url(&self, logical: &str) -> Option<String> {
        let logical = logical.trim_start_matches('/');
        let logical = logical.strip_prefix("static/").unwrap_or(logical);
        self.by_logical
            .get(logical)
            .map(|&i| format!("{URL_PREFIX}{}", self.all[i].hashed))
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.all.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_change_with_content_and_resolve_both_ways() {
        let mut assets = Assets::default();
        assets.insert("css/site.css".into(), b"body{}");
        assets.insert("css/other.css".into(), b"p{}");
        let url = assets.url("css/site.css").expect("known");
        assert!(
            url.starts_with("/static/css/site.") && url.ends_with(".css"),
            "{url}"
        );
        let hashed = url.trim_start_matches(URL_PREFIX);
        let (asset, immutable) = assets.lookup(hashed).expect("hashed resolves");
        assert!(immutable);
        assert_eq!(asset.bytes, b"body{}");
        assert_eq!(asset.content_type, "text/css");
        let (_, immutable) = assets.lookup("css/site.css").expect("logical resolves");
        assert!(!immutable);
        assert_ne!(
            assets.url("css/other.css"),
            Some(url.replace("site", "other")),
            "different content, different hash"
        );
        assert!(assets.lookup("css/missing.css").is_none());
    }
}

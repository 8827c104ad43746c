//! Images: references, registries, pulling, the content store and unpacked
//! overlay layers, and the image records the ImageService serves.
pub mod content;
pub mod record;

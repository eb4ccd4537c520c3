//! Validation of an app's `image` and `read_only`, and of the top-level `registries`.
use super::Ctx;
use crate::image::{ImageRef, ImageSource, RawRegistry, Registry};
use crate::index::join;

impl Ctx<'_> {
    /// `image` and `read_only` of the app at `at`; `set` says which of `command`, `port`,
    /// `workdir` and `user` the app wrote.
    pub(super) fn app_image(
        &mut self,
        at: &str,
        image: Option<&str>,
        read_only: Option<bool>,
        set: [bool; 4],
    ) -> Option<ImageSource> {
        let Some(text) = image else {
            if read_only.is_some() {
                self.fault(
                    &join(at, "read_only"),
                    "only meaningful with `image`: a `rootfs` directory is used as it is",
                );
            }
            return None;
        };
        let reference = match ImageRef::parse(text.trim()) {
            Ok(r) => r,
            Err(e) => {
                self.fault(&join(at, "image"), e);
                return None;
            }
        };
        let reference = match reference {
            ImageRef::OciLayout { path, tag } => ImageRef::OciLayout {
                path: self.resolve(&path.to_string_lossy()),
                tag,
            },
            ImageRef::DockerArchive { path } => ImageRef::DockerArchive {
                path: self.resolve(&path.to_string_lossy()),
            },
            r => r,
        };
        Some(ImageSource {
            reference,
            read_only: read_only.unwrap_or(false),
            command_set: set[0],
            port_set: set[1],
            workdir_set: set[2],
            user_set: set[3],
        })
    }

    /// The top-level `registries`.
    pub(super) fn registries(&mut self, raw: Option<Vec<RawRegistry>>) -> Vec<Registry> {
        let mut faults = Vec::new();
        let out = crate::image::validate_registries(
            raw.unwrap_or_default(),
            &|p| self.resolve(p),
            &mut |path, msg| faults.push((path, msg)),
        );
        for (path, msg) in faults {
            self.fault(&path, msg);
        }
        out
    }
}

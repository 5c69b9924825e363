//! Manifest parsing: which kind a manifest is, and what it references.
//!
//! The registry stores and serves the exact bytes it received; this module only reads them to
//! decide whether they are acceptable and which blobs, child manifests and subject they name.
//! Four kinds are accepted: OCI image manifest and index, Docker schema2 manifest and manifest
//! list. Artifacts are OCI manifests or indexes with an `artifactType` (or a config media type
//! that says what they are).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::media_type::{self, essence};
use crate::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

impl ManifestKind {
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::OciManifest => media_type::OCI_MANIFEST,
            ManifestKind::OciIndex => media_type::OCI_INDEX,
            ManifestKind::DockerManifest => media_type::DOCKER_MANIFEST,
            ManifestKind::DockerManifestList => media_type::DOCKER_MANIFEST_LIST,
        }
    }

    pub fn from_media_type(media_type: &str) -> Option<ManifestKind> {
        match media_type {
            media_type::OCI_MANIFEST => Some(ManifestKind::OciManifest),
            media_type::OCI_INDEX => Some(ManifestKind::OciIndex),
            media_type::DOCKER_MANIFEST => Some(ManifestKind::DockerManifest),
            media_type::DOCKER_MANIFEST_LIST => Some(ManifestKind::DockerManifestList),
            _ => None,
        }
    }

    fn is_index(self) -> bool {
        matches!(
            self,
            ManifestKind::OciIndex | ManifestKind::DockerManifestList
        )
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<Map<String, Value>>,
}

/// What the registry needs to know about a manifest it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: ManifestKind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest is invalid: {0}")]
    Invalid(String),
    #[error("manifest media type {0:?} is not supported (use an OCI image manifest or index, or a Docker schema2 manifest or manifest list)")]
    UnsupportedMediaType(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    annotations: Option<Map<String, Value>>,
}

impl Manifest {
    /// Parses manifest bytes sent with `content_type` (which may be absent or generic, in
    /// which case the body's own `mediaType` decides).
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|err| ManifestError::Json(err.to_string()))?;
        if !value.is_object() {
            return Err(ManifestError::Invalid(
                "the top level must be a JSON object".into(),
            ));
        }
        let raw: RawManifest =
            serde_json::from_value(value).map_err(|err| ManifestError::Invalid(err.to_string()))?;
        let kind = Self::kind(content_type, &raw)?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::Invalid("schemaVersion must be 2".into()));
        }
        let manifest = Manifest {
            kind,
            config: raw.config,
            layers: raw.layers.unwrap_or_default(),
            manifests: raw.manifests.unwrap_or_default(),
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        };
        manifest.check_shape()?;
        Ok(manifest)
    }

    fn kind(content_type: Option<&str>, raw: &RawManifest) -> Result<ManifestKind, ManifestError> {
        let header = content_type.map(essence).filter(|ct| !ct.is_empty());
        let body = raw.media_type.as_deref();
        for candidate in [header.as_deref(), body].into_iter().flatten() {
            if candidate == media_type::DOCKER_MANIFEST_V1
                || candidate == media_type::DOCKER_MANIFEST_V1_SIGNED
            {
                return Err(ManifestError::UnsupportedMediaType(candidate.to_owned()));
            }
        }
        let from_header = header.as_deref().and_then(ManifestKind::from_media_type);
        let from_body = body.map(|mt| {
            ManifestKind::from_media_type(mt)
                .ok_or_else(|| ManifestError::UnsupportedMediaType(mt.to_owned()))
        });
        match (from_header, from_body) {
            (Some(h), Some(Ok(b))) if h != b => Err(ManifestError::Invalid(format!(
                "Content-Type {} does not match the manifest's mediaType {}",
                h.media_type(),
                b.media_type()
            ))),
            (Some(h), Some(Ok(_)) | None) => Ok(h),
            (_, Some(Err(err))) => Err(err),
            // A Content-Type is the body's mediaType or absent: one that names anything else
            // (text/plain, application/json) would be stored under a type the pusher never
            // declared.
            (None, Some(Ok(b))) => match header {
                Some(other) => Err(ManifestError::Invalid(format!(
                    "Content-Type {other} does not match the manifest's mediaType {}",
                    b.media_type()
                ))),
                None => Ok(b),
            },
            (None, None) => match header {
                // OCI manifests may omit mediaType; the Content-Type then names an unknown type.
                Some(other)
                    if other != "application/json" && other != "application/octet-stream" =>
                {
                    Err(ManifestError::UnsupportedMediaType(other))
                }
                _ if raw.manifests.is_some() && raw.config.is_none() => Ok(ManifestKind::OciIndex),
                _ if raw.config.is_some() => Ok(ManifestKind::OciManifest),
                _ => Err(ManifestError::Invalid(
                    "no media type given and none can be inferred".into(),
                )),
            },
        }
    }

    fn check_shape(&self) -> Result<(), ManifestError> {
        if self.kind.is_index() {
            if self.config.is_some() || !self.layers.is_empty() {
                return Err(ManifestError::Invalid(
                    "an index must not have a config or layers".into(),
                ));
            }
            for child in &self.manifests {
                if child.urls.is_empty()
                    && ManifestKind::from_media_type(&child.media_type).is_none()
                    && essence(&child.media_type).is_empty()
                {
                    return Err(ManifestError::Invalid(
                        "an index entry has no media type".into(),
                    ));
                }
            }
        } else {
            if self.config.is_none() {
                return Err(ManifestError::Invalid(
                    "an image manifest must have a config descriptor".into(),
                ));
            }
            if !self.manifests.is_empty() {
                return Err(ManifestError::Invalid(
                    "an image manifest must not list manifests".into(),
                ));
            }
        }
        if matches!(
            self.kind,
            ManifestKind::DockerManifest | ManifestKind::DockerManifestList
        ) && (self.subject.is_some() || self.artifact_type.is_some())
        {
            return Err(ManifestError::Invalid(
                "Docker manifests cannot carry subject or artifactType".into(),
            ));
        }
        Ok(())
    }

    /// Blobs that must exist in the repository before this manifest is accepted: the config
    /// and every layer a client is expected to fetch from the registry.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter().filter(|layer| {
            !media_type::is_foreign_layer(&layer.media_type) || layer.urls.is_empty()
        }))
    }

    /// Child manifests that must exist in the repository (indexes only).
    pub fn required_manifests(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifests.iter()
    }

    /// What the referrers API reports as this manifest's type: its `artifactType`, else (when
    /// that is missing or empty) its config's media type.
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .filter(|t| !t.is_empty())
            .or_else(|| {
                self.config
                    .as_ref()
                    .map(|config| config.media_type.as_str())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":7}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":9}}]{extra}}}"#
        )
    }

    fn outcome(content_type: Option<&str>, body: &str) -> String {
        match Manifest::parse(content_type, body.as_bytes()) {
            Ok(manifest) => format!("{:?}", manifest.kind),
            Err(ManifestError::Json(_)) => "json".into(),
            Err(ManifestError::Invalid(_)) => "invalid".into(),
            Err(ManifestError::UnsupportedMediaType(_)) => "unsupported".into(),
        }
    }

    #[test]
    fn accepts_the_four_kinds_and_refuses_the_rest() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":1}},"layers":[]}}"#,
            media_type::DOCKER_MANIFEST
        );
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":3}}]}}"#,
            media_type::OCI_INDEX,
            media_type::OCI_MANIFEST
        );
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":3}}]}}"#,
            media_type::DOCKER_MANIFEST_LIST,
            media_type::DOCKER_MANIFEST
        );
        let no_media_type = image("").replace(
            r#""mediaType":"application/vnd.oci.image.manifest.v1+json","#,
            "",
        );
        let cases: Vec<(Option<&str>, String, &str)> = vec![
            (Some(media_type::OCI_MANIFEST), image(""), "OciManifest"),
            (None, image(""), "OciManifest"),
            (
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
                image(""),
                "OciManifest",
            ),
            (
                Some(media_type::DOCKER_MANIFEST),
                docker.clone(),
                "DockerManifest",
            ),
            (Some(media_type::OCI_INDEX), index.clone(), "OciIndex"),
            (
                Some(media_type::DOCKER_MANIFEST_LIST),
                list,
                "DockerManifestList",
            ),
            (
                Some(media_type::OCI_MANIFEST),
                no_media_type.clone(),
                "OciManifest",
            ),
            (None, no_media_type, "OciManifest"),
            (Some(media_type::OCI_INDEX), image(""), "invalid"),
            (Some(media_type::DOCKER_MANIFEST), image(""), "invalid"),
            (Some(media_type::OCI_MANIFEST), index, "invalid"),
            // A Content-Type other than the body's mediaType is refused, known type or not.
            (Some("text/plain"), image(""), "invalid"),
            (Some("application/json"), docker.clone(), "invalid"),
            (Some("application/octet-stream"), image(""), "invalid"),
            (
                Some(media_type::DOCKER_MANIFEST_V1_SIGNED),
                r#"{"schemaVersion":1}"#.into(),
                "unsupported",
            ),
            (
                Some("application/vnd.oci.artifact.manifest.v1+json"),
                r#"{"blobs":[]}"#.into(),
                "unsupported",
            ),
            (
                Some(media_type::OCI_MANIFEST),
                image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
                "invalid",
            ),
            (
                Some(media_type::OCI_MANIFEST),
                image("").replace(D1, "sha256:nothex"),
                "invalid",
            ),
            (
                Some(media_type::OCI_MANIFEST),
                image("").replace("\"size\":7", "\"size\":-7"),
                "invalid",
            ),
            (Some(media_type::OCI_MANIFEST), "{not json".into(), "json"),
            (Some(media_type::OCI_MANIFEST), "[1,2]".into(), "invalid"),
            (Some(media_type::OCI_MANIFEST), String::new(), "json"),
            (None, r#"{"schemaVersion":2}"#.into(), "invalid"),
        ];
        for (content_type, body, expected) in cases {
            assert_eq!(
                outcome(content_type, &body),
                expected,
                "content type {content_type:?}, body {body}"
            );
        }
    }

    #[test]
    fn extracts_references_subject_and_artifact_type() {
        let subject = format!(
            r#","subject":{{"mediaType":"{}","digest":"{D2}","size":5}},"artifactType":"application/x.sbom""#,
            media_type::OCI_MANIFEST
        );
        let manifest = Manifest::parse(None, image(&subject).as_bytes()).expect("valid manifest");
        let blobs: Vec<String> = manifest
            .required_blobs()
            .map(|d| d.digest.to_string())
            .collect();
        assert_eq!(blobs, vec![D1.to_owned(), D2.to_owned()]);
        assert_eq!(
            manifest.subject.as_ref().map(|s| s.digest.to_string()),
            Some(D2.to_owned())
        );
        assert_eq!(
            manifest.effective_artifact_type(),
            Some("application/x.sbom")
        );

        let plain = Manifest::parse(None, image("").as_bytes()).expect("valid manifest");
        assert_eq!(
            plain.effective_artifact_type(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let empty = Manifest::parse(None, image(r#","artifactType":"""#).as_bytes())
            .expect("valid manifest");
        assert_eq!(
            empty.effective_artifact_type(),
            Some("application/vnd.oci.image.config.v1+json"),
            "an empty artifactType counts as missing"
        );
    }

    #[test]
    fn foreign_layers_with_urls_are_not_required() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":1}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","size":1,"urls":["https://example.com/layer"]}}]}}"#,
            media_type::DOCKER_MANIFEST
        );
        let manifest = Manifest::parse(None, body.as_bytes()).expect("valid manifest");
        assert_eq!(manifest.required_blobs().count(), 1);
    }

    #[test]
    fn the_manifest_fuzz_corpus_replays() {
        crate::fuzz::replay("manifest", crate::fuzz::manifest);
    }
}

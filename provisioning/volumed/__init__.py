"""The host service: a Docker volume plugin that mounts each session's S3 prefix with s3fs on
the host (one supervised s3fs per session, with its own scoped credentials and a size-capped
staging area on host disk), so session containers need no device and no capability."""

"""pytest fixtures that start real storage servers (SeaweedFS S3, wsgidav WebDAV)."""

"""CrowdSky's shared library: everything the three roles (ingest app, stacker, janitor) have in common."""

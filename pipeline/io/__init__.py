"""Reading and writing: video decoding (`video`), local and S3 storage with the shard store (`storage`),
and manifests of videos (`manifest`). Imports nothing else from `pipeline`."""

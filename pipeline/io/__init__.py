"""Reading and writing: video decoding (`video`), local and S3 storage (`storage`), the Delta tables
every stage writes (`table`, and `migrate` for stores of the format before), and manifests of videos
(`manifest`). Imports nothing else from `pipeline`."""

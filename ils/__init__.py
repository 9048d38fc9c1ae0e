"""ils: instruction-guided lesion segmentation platform (core: config, store, schemas, image I/O)."""

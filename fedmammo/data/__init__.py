"""Data: manifests, the synthetic phantom, DICOM reading, caches, splits, samplers, patches."""

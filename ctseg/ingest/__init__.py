"""Raw scans to volumes: fetching, DICOM reading and writing, volume conversion, summary statistics."""

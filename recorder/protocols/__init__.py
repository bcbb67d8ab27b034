"""Protocol decoders and front ends that are not plain HTTP (recorder/protocols/<name>/)."""

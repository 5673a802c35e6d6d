"""The material library (材料库): streamed uploads, content-addressed blobs, purpose-bound reuse."""

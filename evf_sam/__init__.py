"""EVF-SAM: Early Vision-Language Fusion for Text-Prompted Segment Anything Model."""

__version__ = "0.1.0"

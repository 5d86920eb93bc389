"""Segment Anything labelers on the shared layer: box -> mask (SAM, SAM-HQ, SAM 2, EdgeTAM) and text -> masks
(SAM 3), from local Hugging Face directories, with no training."""

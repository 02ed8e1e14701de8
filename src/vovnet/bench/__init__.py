"""``vovnet bench``: ours against timm / torchvision in one interleaved run, each subject in its own worker
process (:mod:`.worker`), with stage clocks for whole detectors and segmenters (:mod:`.dense_steps`)."""

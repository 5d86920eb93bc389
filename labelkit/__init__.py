"""The shared layer under the labelers (mal, gdino, sam) and the front door (auto_label): COCO reading and
validation, images, masks and RLE, evaluation, exactly-once sharded writers, precision, console and CLI
helpers. It imports none of them (tests/test_layers.py)."""

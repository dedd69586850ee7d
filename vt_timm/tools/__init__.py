"""Tools around the models: MAC counting against the paper's tables (``macs``, ``segmentation_macs``),
token-attention pictures (``visualize``), export (``export``), the Hugging Face Hub (``hub``), training
curves (``plot``), datasets (``data``), run configs and checkpoints, and controlled training runs
(``parity``)."""

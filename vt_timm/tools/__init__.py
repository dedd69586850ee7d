"""Tools around the models: MAC counting against the paper's tables (``macs``, ``segmentation_macs``),
token-attention pictures (``visualize``) and image files (``images``), export (``export``), the Hugging Face
Hub (``hub``), training curves (``plot``), datasets (``data``; segmentation: ``segmentation_data``,
``segmentation_sets``, ``segmentation_metrics``), run configs (``configs``), checkpoints (``checkpoints``),
files and results (``files``), the evaluation loop (``evaluate``) and controlled training runs (``parity``)."""

"""Training data: image-folder and CoOp-split datasets with k-shot sampling, the registry of the paper's
11 datasets, the demo's digits, and CLIP embeddings extracted once and cached."""

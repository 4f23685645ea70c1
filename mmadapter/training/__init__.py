"""Few-shot training on cached embeddings, the base-to-novel report, and the steps the CLI and the demo
share (open a dataset, embed it, train, save)."""

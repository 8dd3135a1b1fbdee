"""Package data: prompt templates and per-dataset class lists with auxiliary texts."""

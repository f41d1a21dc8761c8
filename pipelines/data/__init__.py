"""Convert: raw data sets into alpaca files and `data/dataset_info.json` (converter registry, the prompt contract,
bundled samples, downloads, token lengths). Imports nothing of train, serve, eval or run."""

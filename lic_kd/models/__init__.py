"""The networks: built from config (conf/model), loaded from any checkpoint, CompressAI's zoo, shipped ladders."""

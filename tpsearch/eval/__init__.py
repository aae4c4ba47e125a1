"""Evaluation and benchmarks: STS (Spearman), retrieval on BEIR-layout data, encoder throughput.

These sit above the core (encoder, index, pipeline, searcher) and use only its public names.
"""

"""Re-ranking a retriever's full ranking (``candidate_source``): the retriever, its Config and data, and the blend."""

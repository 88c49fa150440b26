"""Another RecBole model beside the LLM: re-ranking a retriever's full ranking (``candidate_source``: the retriever
and the blend) and fusing a prior's scores on sampled candidates (``prior_model``)."""

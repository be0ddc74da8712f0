"""Remote reading: catalog id + member + range -> correct bytes, fetched lazily.

Layers, top to bottom: ``package`` (ZIP index and block-aligned reads) and ``member`` (stored
and deflated members), ``block_cache`` (LRU + single-flight), ``storage`` (validated range GETs
and the pinned package version), ``signed_url`` (URL lifecycle), ``retry`` (backoff policy),
``zipindex`` (pure ZIP parsing).
"""

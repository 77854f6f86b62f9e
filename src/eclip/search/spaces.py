"""The vector spaces of an index: one home for their names.

Every listing has three vectors, stored (``{space}.npy``, ``{space}.faiss``, Milvus fields) under
the space names ``SPACES``. The API and the embeddings (``encode.Embeddings.modality``) name them
``image``, ``text`` and ``both`` (the fused vector); ``AGAINST`` maps those names to the stored
spaces and ``API_NAME`` back.
"""

from __future__ import annotations

SPACES = ("image", "text", "product")
AGAINST = {"image": "image", "text": "text", "both": "product"}  # API name -> stored space
API_NAME = {space: name for name, space in AGAINST.items()}  # stored space -> API name

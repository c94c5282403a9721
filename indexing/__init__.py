"""Caption text -> searchable FAISS index: embed.py (text -> vectors), build.py (-> index dir),
search.py (index dir + query -> hits). Pure numpy/FAISS/sentence-transformers; never imports Beam.
"""

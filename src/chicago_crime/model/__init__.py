"""The model: search (``tune``), training (``train``), evaluation (``evaluate``), the registry
and its model card (``registry``), prediction paths (``predict``) and notebook helpers
(``analysis``)."""

"""The ``generate`` stage: a model writes a dataset for a later stage (``alignops.api.generate``).

``resources`` reads the files a user can replace (templates, principles, exemplars, seed tasks;
defaults in ``defaults/``) and renders prompts from them (pure Python: the demo generator uses it);
``rouge`` is ROUGE-L; ``sampler`` turns prompts into texts with a rollout engine; ``filters`` keeps
what passes (length, ROUGE-L novelty, the verifier); ``methods`` registers the five methods;
``stage`` runs one and commits the dataset (files first, manifest last)."""

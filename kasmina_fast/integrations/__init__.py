"""Growth inside the training frameworks people use: :mod:`kasmina_fast.integrations.hf`
(Hugging Face ``Trainer``) and :mod:`kasmina_fast.integrations.lightning` (Lightning).
Each module imports its framework; import the one you use."""

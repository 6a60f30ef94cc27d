"""Scoring: ``score_dataset`` (``entry``: a dataset's score table, or with ``out=`` the table
written in resumable shards by ``extract``), the forward passes behind it (``scores``), the
score registry (``measures``), scores taken for free from the training steps
(``stepscores``) and reference outputs computed once (``refcache``)."""

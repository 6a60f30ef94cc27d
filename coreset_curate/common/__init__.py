"""What every layer shares: the file contracts (score tables in ``tables``, the index in
``index``), atomic writes (``atomic``), argument checks and id alignment (``checks``),
the one registry helper (``registry``), ranks and barriers (``distributed``), the
oversubscription check (``cores``) and progress bars (``progress``)."""

"""finetune.quiet: the one place the libraries' false alarms are silenced; other warnings still show."""

from __future__ import annotations

import warnings

from finetune import quiet


def test_the_gradient_checkpointing_deprecation_is_silenced_and_nothing_else():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.checkpointing_deprecation()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1
        )
        warnings.warn("gradient_checkpointing_enable(...) is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`use_cache` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` appears in a user warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "`use_cache` is deprecated",
        "`is_gradient_checkpointing` appears in a user warning",
    ]

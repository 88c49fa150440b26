"""LRGD's RecBole metrics: ``EffectD`` (registered so that ``metrics: [..., EffectD]`` works in YAML).

RecBole is imported when the metrics are registered, not with the package: ``evaluator.per_user`` (per-user NDCG,
the paired bootstrap) serves tools that run without RecBole too (benchmarks/gpu_equality.py on a bare GPU image).
"""


def register_metrics() -> None:
    """Add the plugin's metrics to RecBole's registry dicts; must run before ``Config()``."""
    from recbole.evaluator import register

    from recbole_lrgd.evaluator.effect import EffectD

    for cls in (EffectD,):
        name = cls.__name__.lower()
        register.metrics_dict[name] = cls
        register.metric_information[name] = cls.metric_need
        register.metric_types[name] = cls.metric_type
        if cls.smaller and name not in register.smaller_metrics:
            register.smaller_metrics.append(name)


__all__ = ["register_metrics"]

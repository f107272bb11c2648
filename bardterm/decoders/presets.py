"""Named setups for the common cases. A preset is a selector plus settings; flags given with it win."""

from bardterm import hookimpl


@hookimpl
def register_presets(register):
    register("focused", "Sampling kept close to the likely path.", decoder="sample", temperature=0.7, top_k=40)
    register("nucleus", "Sampling from the top 90% of probability mass.", decoder="sample", top_p=0.9)
    register("creative", "Sampling, a little hot, with a repetition penalty: the default.",
             decoder="sample", repetition_penalty=1.1, temperature=0.9, top_k=50, top_p=0.95)

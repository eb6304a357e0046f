"""The built-in fine-tuning methods, one plugin module each (registered through the entry-point
group ``tunewright`` like any third-party plugin):

===============  =====================  ==========================================================
method           module                 trains / merges
===============  =====================  ==========================================================
lora, dora       ``lora``               low-rank updates (PEFT); merge folds them into the weights
ia3              ``ia3``                activation scales (PEFT); merge folds them in
prompt_tuning    ``prompt_tuning``      virtual token embeddings (PEFT); merge refuses
adapter          ``adapter``            bottleneck adapters after blocks; merge keeps them inside
full             ``full``               everything; merge is the model
freeze           ``freeze``             head + top N blocks, gradual unfreezing; merge is the model
===============  =====================  ==========================================================

For ``sequence_classification`` every method trains the classification head (``classifier``,
``score``...) as well, and saves it with its state: a head initialised at load time is random.

``freeze`` has two calls beyond the ``Method`` protocol that a trainer looks up with ``getattr``:
``on_epoch(model, epoch)`` (gradual unfreezing) and ``optimizer_parameters(model)``; see its module.

Shared pieces: ``model_parts`` finds blocks, head and linear layers of any transformers model;
``peft_backed`` is the PEFT glue; ``lora_fused`` makes each of PEFT's LoRA linear layers one
autograd step; ``state_files`` is the folder format of non-PEFT methods.
"""

"""TracingPolicy engine: loading and validating Tetragon-format policies
(loader, schema, validate, model), choosing a hook backend for this kernel
(hooks), turning policies into BPF programs and maps (program), and keeping
the loaded set in step with the policy directory (manager)."""

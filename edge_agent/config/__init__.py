"""The configuration: TOML file, option declarations, sections and the reference.

    options      declaring options (``section``, ``option``, kinds) and the TOML reader
    units        sizes, rates and durations
    loading      load_config / parse_config and the whole Config
    agent        [agent], [spool]
    budget       [uplink], a sink's upload share and [[sinks.NAME.schedule]]
    sinks        [sinks.NAME] and the registry of sink types
    sink_kinds   what a sink type declares; the AWS and request options
    cameras      [cameras.NAME]
    mqtt         [mqtt], [mqtt.tls], [[mqtt.subscriptions]]
    reference    writes docs/CONFIG.md from the declarations

Each sink type's own options are in edge_agent/sinks/<type>/options.py.
"""

"""Tools the sandbox code may call: upstream MCP servers ("code mode") and host Python callables.

``config`` reads the ``mcpServers`` file, ``upstreams`` keeps one client session per upstream,
``registry`` turns them into ``CodeTools`` per principal, ``callables`` does the same for Python
functions, ``listing`` renders the function list for the ``code_execution`` description.
"""

from .callables import code_tools_from_callables
from .config import ToolsConfig, ToolsConfigError, function_name, identifier, load_tools_config, parse_tools_config
from .listing import render_listing
from .registry import ToolLimits, ToolRegistry, limits_from, registry_from_settings

__all__ = [
    "ToolLimits",
    "ToolRegistry",
    "ToolsConfig",
    "ToolsConfigError",
    "code_tools_from_callables",
    "function_name",
    "identifier",
    "limits_from",
    "load_tools_config",
    "parse_tools_config",
    "registry_from_settings",
    "render_listing",
]

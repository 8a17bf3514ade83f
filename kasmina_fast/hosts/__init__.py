"""Host networks and the morphogenetic plane."""

from kasmina_fast.hosts.cnn import CNNHost
from kasmina_fast.hosts.graft import ModuleHost, graft
from kasmina_fast.hosts.plane import MorphogeneticModel
from kasmina_fast.hosts.protocol import HostProtocol
from kasmina_fast.hosts.transformer import TransformerHost

__all__ = ["CNNHost", "HostProtocol", "ModuleHost", "MorphogeneticModel", "TransformerHost", "graft"]

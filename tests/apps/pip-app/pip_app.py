import bioengine
from bioengine import __version__
from bioengine.utils import create_logger
from pydantic import Field

logger = create_logger("pip-app")


@bioengine.app(num_cpus=0, memory_mb=128, pip=["tabulate==0.9.0"])
class PipApp:
    @bioengine.method
    async def table(self, rows: list = Field(..., description="Rows of cells")) -> dict:
        """The rows as a plain-text table, by tabulate (installed for this app)."""
        import tabulate

        logger.info("a table of %d rows", len(rows))
        return {
            "table": tabulate.tabulate(rows, tablefmt="plain"),
            "tabulate": tabulate.__version__,
            "bioengine": __version__,
        }

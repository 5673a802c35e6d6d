"""Electronic certificate store (电子证照库): identifiers, metadata and files."""

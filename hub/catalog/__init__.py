"""The item catalogue (事项目录): stored items and the YAML/JSON catalogue loader."""

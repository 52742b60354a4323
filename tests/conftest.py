pytest_plugins = ["tests.servers", "tests.databases"]

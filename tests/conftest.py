pytest_plugins = ["tests.servers", "tests.databases", "tests.apps", "tests.browser"]

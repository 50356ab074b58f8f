pytest_plugins = ["tests.fixtures.services", "tests.fixtures.brokers", "tests.fixtures.bundles"]

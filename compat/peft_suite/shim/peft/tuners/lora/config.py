from peft._internal import unsupported_method

BdLoraConfig = unsupported_method("BdLoraConfig")

from peft._internal import internal

MontecloraSampler = internal("MontecloraSampler")
